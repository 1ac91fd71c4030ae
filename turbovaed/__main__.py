from turbovaed.cli import main

main()
