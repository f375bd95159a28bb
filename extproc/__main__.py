from extproc.cli import main

# Guarded: worker processes (spawned) import this module again as __mp_main__.
if __name__ == "__main__":
    raise SystemExit(main())
