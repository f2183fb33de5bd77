"""`python -m wikigpt_core.serve [args]` = `wikigpt serve`; `python -m wikigpt_core.serve chat
[args]` = `wikigpt chat`."""
import sys

from wikigpt_core.serve.cli import chat_main, serve_main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["chat"]:
        sys.exit(chat_main(argv[1:]))
    sys.exit(serve_main(argv[1:] if argv[:1] == ["serve"] else argv))
