from edge_chat.cli import main

main()
