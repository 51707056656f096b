from kymamesh.cli import entry

entry()
