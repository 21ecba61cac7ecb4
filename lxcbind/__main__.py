from lxcbind.cli import main_entry

main_entry()
