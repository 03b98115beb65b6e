from lit_ft.run import main

main()
