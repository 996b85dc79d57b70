from patientkit.cli.app import main

main()
