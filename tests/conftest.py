pytest_plugins = ["jsqueue.testing"]
