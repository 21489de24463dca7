# Paired final- and summed-loss differences of each learned optimizer against the tuned Adam of
# each test variant and horizon, 95% t-intervals over the test seeds (the same optimizees).
import sys

import numpy as np
import scipy.stats as st

import l2obench

df = l2obench.load_results(sys.argv[1])
t = df[(df.kind == "test") & (df.metric == "loss")]
final = t[t.step == t.horizon - 1].pivot_table(index=["task", "horizon", "seed"], columns="optimizer", values="loss")
summed = t.groupby(["task", "horizon", "seed", "optimizer"]).loss.sum().unstack("optimizer")
learned = sorted(t[t.optimizer_kind == "learned"].optimizer.unique())
print("| test variant | T | optimizer | final (adam) | final - adam [95%] | summed - adam [95%] |")
print("|---|---|---|---|---|---|")
for (task, T), f in final.groupby(level=[0, 1], sort=False):
    s = summed.loc[(task, T)]
    for name in learned:
        row = []
        for table in (f.droplevel([0, 1]), s):
            d = (table[name] - table["adam"]).to_numpy()
            half = st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            mark = "**" if d.mean() + half < 0 else ""
            row.append(f"{mark}{d.mean():+.3g} [{d.mean() - half:+.3g}, {d.mean() + half:+.3g}]{mark}")
        print(f"| {task.removeprefix('mnist-mlp')} | {T} | {name} | {f[name].mean():.3g} ({f['adam'].mean():.3g}) | "
              f"{row[0]} | {row[1]} |")
