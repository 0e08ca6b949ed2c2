"""The training curves of a run (loss and CER per step) as a PNG, from Trainer's log rows."""


def plot_curves(log_history, path):
    """log_history: Trainer log rows with "step" and "loss" (training; "llm_loss"/"ctc_loss" its parts, when
    logged) or "eval_cer"/"test_cer" (evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cer = [(row["step"], row[key]) for row in log_history for key in ("eval_cer", "test_cer") if key in row]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "llm_loss", "ctc_loss"):
        points = [(row["step"], row[key]) for row in log_history if key in row]
        if points:
            left.plot(*zip(*points), marker=".", label=key)
    if left.lines:
        left.legend()
    left.set(title="training loss", xlabel="step", ylabel="loss", yscale="log")
    right.plot(*zip(*cer), marker="o", color="tab:red") if cer else None
    right.set(title="CER on generated transcripts", xlabel="step", ylabel="CER", ylim=(0, None))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
