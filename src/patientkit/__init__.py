"""patientkit: move patient data between systems, exactly, fast, losing nothing."""

__version__ = "0.1.0"
