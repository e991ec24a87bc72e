from w2vtools.cli import main

main()
