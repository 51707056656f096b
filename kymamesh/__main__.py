from kymamesh.cli import main

main()
