"""The commands of the command line, one module each; ``common`` holds what they share."""
