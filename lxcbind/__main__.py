from lxcbind._entry import main

main()
