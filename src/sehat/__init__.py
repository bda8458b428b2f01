"""sehat: outpatient care for clinics and hospital networks."""

__version__ = "0.1.0"
