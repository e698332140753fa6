from i2pscan.cli import main

main()
