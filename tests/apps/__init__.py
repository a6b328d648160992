"""Device apps the tests run by name (``--app tests.apps.<module>:app``), as a user's would be."""
