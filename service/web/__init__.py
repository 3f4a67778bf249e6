"""What the service shows to people in a browser: the API documentation and the console.

Every page, script, stylesheet and icon is served by the service itself from files shipped in
the package, so all of it works on a machine without internet (biometric deployments often
have none). No page may reference another host; tests/service/web checks that.
"""
