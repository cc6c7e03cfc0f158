from stacko.cli import console_main

console_main()
