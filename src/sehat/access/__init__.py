"""Access control over patient data as seen from outside: the audit log for auditors (who looked at what)."""
