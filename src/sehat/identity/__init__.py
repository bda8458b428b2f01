"""Users, credentials, sessions and tokens, second factors, roles and permissions."""
