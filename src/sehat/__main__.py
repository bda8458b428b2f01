from sehat.cli import main

main()
