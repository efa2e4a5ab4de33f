"""A stand-in for an experiment binary: writes metrics.jsonl as the trainer does, fast.

eval_loss = (log10(lr) + 3)^2 + width / 1000, so lr=1e-3 is best; counts its runs in runs.txt.
--config.fail=True fails every point, --config.fail_width=W the points of d_model W (with a message
on stderr), --config.kill_width=W kills them (SIGKILL); --config.sleep=S makes the others take S
seconds.
"""

import json
import math
import os
import signal
import sys
import time


def main(argv: list[str]) -> None:
  flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
  workdir = flags["workdir"]
  lr = float(flags.get("config.optimizer.learning_rate", "1e-3"))
  width = int(flags.get("config.model.d_model", "64"))
  if flags.get("config.fail") == "True" or flags.get("config.fail_width") == str(width):
    print(f"fake failure of the point with d_model={width}", file=sys.stderr)
    sys.exit(3)
  if flags.get("config.kill_width") == str(width):
    os.kill(os.getpid(), signal.SIGKILL)
  time.sleep(float(flags.get("config.sleep", "0")))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 1, "train_loss": 5.0}) + "\n")
    f.write(json.dumps({"step": 2, "eval_loss": (math.log10(lr) + 3) ** 2 + width / 1000}) + "\n")
  with open(os.path.join(os.path.dirname(os.path.dirname(workdir)), "runs.txt"), "a") as f:
    f.write(workdir + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
