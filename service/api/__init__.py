"""HTTP edge of the service: routers, schemas and the error table."""
