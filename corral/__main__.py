from corral.client.cli import main

main()
