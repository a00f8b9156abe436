"""Old name of `python -m resnetlab.runner.worker`, kept for the commands older run folders recorded."""

if __name__ == "__main__":
    __import__("runpy").run_module("resnetlab.runner.worker", run_name="__main__", alter_sys=True)
