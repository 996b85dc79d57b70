import subprocess
import sys


def test_version_and_unknown_flag():
    ok = subprocess.run(
        [sys.executable, "-m", "patientkit", "--version"], capture_output=True, text=True
    )
    assert ok.returncode == 0
    assert ok.stdout.startswith("patientkit ")
    bad = subprocess.run(
        [sys.executable, "-m", "patientkit", "--bogus"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "No such option: --bogus" in bad.stderr
    assert "Traceback" not in bad.stderr
