"""Organizations (tenants), their facilities and departments."""
