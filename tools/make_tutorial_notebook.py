"""Writes examples/tutorial.ipynb (the seed tutorial as a notebook) from the cells below.

Edit the cells here and run `python tools/make_tutorial_notebook.py`; tests/test_notebook.py
executes the result.
"""

from pathlib import Path

import nbformat as nbf


md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
cells = [
md("""# Large-scale matrix computations: the PyWren tutorial on shardwren

The 2017 PyWren tutorial (*Large Scale Matrix Computations*), cell by cell, with only
the imports and the data loading changed: `from shardwren import pywren` instead of
`import pywren`. Then the same 1-nearest-neighbour classification of MNIST the
shardwren ways: the fused block-parallel `shardwren.linalg.knn`, and its pruned
variant (`method="pruned"`), with the timeline of the job's tasks.

Data: MNIST from `$SHARDWREN_DATA_DIR/mnist` (or the usual places `shardwren.datasets`
looks); without it, scikit-learn's 8x8 digits, as `shardwren demo` does.
`SHARDWREN_TUTORIAL_SUBSET=N` uses the first N training images (and N/6 test images)."""),
code("""import itertools
import os
import time
from operator import itemgetter

import numpy as np
from sklearn import metrics

import shardwren
from shardwren import matrix, pywren                 # was: import pywren; import matrix
from shardwren.pywren import wrenconfig as wc        # was: import pywren.wrenconfig as wc

DEFAULT_BUCKET = wc.default()['s3']['bucket']
SUBSET = int(os.environ.get("SHARDWREN_TUTORIAL_SUBSET", "0"))"""),
code("""from shardwren.datasets import load_mnist          # was: sklearn.datasets.fetch_mldata
from shardwren.errors import DatasetNotFoundError

try:
    X_train, y, X_test, y_t = load_mnist(download=False)
    DATASET, ROWS = "MNIST", 4000
except DatasetNotFoundError as exc:
    from sklearn.datasets import load_digits
    print("MNIST unavailable:", str(exc).splitlines()[0], "- using scikit-learn's 8x8 digits")
    d = load_digits()
    X, labels = d.data.astype(np.float32), d.target.astype(np.int64)
    X_train, y, X_test, y_t = X[:1400], labels[:1400], X[1400:], labels[1400:]
    DATASET, ROWS = "digits", 500
if SUBSET:
    X_train, y, X_test, y_t = X_train[:SUBSET], y[:SUBSET], X_test[:SUBSET // 6], y_t[:SUBSET // 6]
y_train = y[:, np.newaxis]
y_test = y_t[:, np.newaxis]
print(DATASET, X_train.shape, X_test.shape)"""),
md("## 1. Matrix multiplication (the tutorial's warm-up)"),
code("""def my_function(b):
    x = np.random.normal(0, b, 1024)
    A = np.random.normal(0, b, (1024, 1024))
    return np.dot(A, x)

pwex = pywren.default_executor()
res = pwex.map(my_function, np.linspace(0.1, 10, 100))
pywren.wait(res)
print(len(res), "matrix-vector products; first norm", np.linalg.norm(res[0].result()))"""),
md("## 2. Distributed nearest neighbour with large-scale matrix multiplication (the tutorial's way)"),
code("""X_train_sharded = matrix.ShardedMatrix("x_train", shape=X_train.shape, bucket=DEFAULT_BUCKET,
                                      shard_sizes=[ROWS, X_train.shape[1]])
X_train_sharded.shard_matrix(X_train, n_jobs=16)
X_test_sharded = matrix.ShardedMatrix("x_test", shape=X_test.shape, bucket=DEFAULT_BUCKET,
                                     shard_sizes=[ROWS, X_test.shape[1]])
X_test_sharded.shard_matrix(X_test, n_jobs=16)

def compute_local_nearest_neighbor_labels(X_train, X_test, y_test, y_train):
    train_norms = np.linalg.norm(X_train, axis=1)[:, np.newaxis] ** 2
    test_norms = np.linalg.norm(X_test, axis=1)[np.newaxis, :] ** 2
    return y_train[np.argmin(train_norms + -2*X_train.dot(X_test.T) + test_norms, axis=0)]

t = time.time()
y_test_pred = compute_local_nearest_neighbor_labels(X_train, X_test, y_test, y_train)
print("local numpy: %.1f s" % (time.time() - t))
print("Accuracy is ", metrics.accuracy_score(y_test_pred, y_test))"""),
code("""D_sharded = matrix.ShardedMatrix("D", shape=(X_train.shape[0], X_test.shape[0]),
                                 shard_sizes=[ROWS, ROWS], bucket=DEFAULT_BUCKET)

def compute_pywren_nearest_neighbor_distance_matrix(block_pair, X_train_sharded, X_test_sharded, D_sharded):
    block0, block1 = block_pair
    X_train_block = X_train_sharded.get_block(block0, 0)
    X_test_block = X_test_sharded.get_block(block1, 0)
    train_norms = np.linalg.norm(X_train_block, axis=1)[:, np.newaxis] ** 2
    test_norms = np.linalg.norm(X_test_block, axis=1)[np.newaxis, :] ** 2
    D_block = train_norms + -2*X_train_block.dot(X_test_block.T) + test_norms
    D_sharded.put_block(block0, block1, D_block)
    return 0

pywren_distance_function = lambda bidx: compute_pywren_nearest_neighbor_distance_matrix(
    bidx, X_train_sharded, X_test_sharded, D_sharded)
t = time.time()
futures = pwex.map(pywren_distance_function, D_sharded.block_idxs)
pywren.wait(futures)
print("distance matrix map: %.1f s" % (time.time() - t))

def find_argmin(block_pair, D_sharded):
    D_block = D_sharded.get_block(*block_pair)
    offset = block_pair[0]*D_sharded.shard_sizes[0]
    return (block_pair[1], offset + np.argmin(D_block, axis=0), np.min(D_block, axis=0))

futures = pwex.map(lambda x: find_argmin(x, D_sharded), sorted(D_sharded.block_idxs))
pywren.wait(futures)
results = [f.result() for f in futures]

def compute_results_from_pywren(results):
    mins = []
    for _, group in itertools.groupby(sorted(results, key=itemgetter(0)), key=itemgetter(0)):
        group = list(group)
        argmins = np.vstack([g[1] for g in group])
        argminmin = np.argmin(np.vstack([g[2] for g in group]), axis=0)
        mins.append(argmins[argminmin, np.arange(argmins.shape[1])])
    return np.hstack(mins)

y_test_pred_pywren = y_train[compute_results_from_pywren(results)]
acc_tutorial = metrics.accuracy_score(y_test, y_test_pred_pywren)
print("Accuracy is ", acc_tutorial)
D_sharded.delete()"""),
md("""## 3. The fused way: `shardwren.linalg.knn`

One map computes each block of distances *and* its k smallest in the same task, so the
distance matrix is never written to the store. Distances are exact float64 values."""),
code("""jobs_before = len(list(pwex.history))
t = time.time()
dist, idx = shardwren.linalg.knn(X_train, X_test, k=1, executor=pwex)
fused_jobs = list(pwex.history)[jobs_before:]
print("fused knn: %.1f s" % (time.time() - t))
acc_fused = metrics.accuracy_score(y_test, y_train[idx[:, 0]])
print("Accuracy is ", acc_fused)"""),
md("""## 4. The pruned way: `method="pruned"`

Same exact answer; training points that provably cannot be a query's nearest neighbour
(by a bound from a low-dimensional projection) are skipped."""),
code("""t = time.time()
dist_p, idx_p = shardwren.linalg.knn(X_train, X_test, k=1, executor=pwex, method="pruned")
print("pruned knn: %.1f s" % (time.time() - t))
acc_pruned = metrics.accuracy_score(y_test, y_train[idx_p[:, 0]])
print("Accuracy is ", acc_pruned)
assert np.array_equal(dist_p, dist), "pruned and fused distances differ"
assert acc_tutorial == acc_fused == acc_pruned, (acc_tutorial, acc_fused, acc_pruned)"""),
md("## 5. The timeline of the fused job's tasks"),
code("""import tempfile
from IPython.display import Image, display
from shardwren import plot

job_id, name, recs = max(fused_jobs, key=lambda h: len(h[2]))
png = os.path.join(tempfile.mkdtemp(), "timeline.png")
plot.timeline(recs, png, title=f"{DATASET} 1-NN: {len(recs)} tasks on {pwex.parallelism} workers")
display(Image(filename=png))"""),
code("""X_train_sharded.delete()
X_test_sharded.delete()
pwex.shutdown()"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"}})
nbf.write(nb, Path(__file__).parents[1] / "examples" / "tutorial.ipynb")
