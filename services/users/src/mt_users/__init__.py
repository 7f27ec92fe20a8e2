"""The users service: Accounts, passwords, sessions, profiles, handle search and legacy linkage."""
