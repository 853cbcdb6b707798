"""The HTTP server: `create_app(ServerConfig(index=...))`."""
