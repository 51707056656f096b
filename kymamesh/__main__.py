from kymamesh.cli.app import main

main()
