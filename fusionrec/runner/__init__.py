"""fusionrec.runner: `fusionrec run` - one manifest through prepare, train, evaluate, compile, serve and roll
out on this machine, each building step cached by a content hash of its inputs.

    from fusionrec.runner import Runner, RunOptions
    runner = Runner(load_manifest("examples/quickstart.yaml"), RunOptions(keep_serving=False))
    try:
        report = runner.run()
    finally:
        runner.close()
"""

from fusionrec.runner.run import Runner, RunOptions
from fusionrec.runner.summary import RunReport

__all__ = ["RunOptions", "RunReport", "Runner"]
