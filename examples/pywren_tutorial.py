"""The 2017 PyWren tutorial "Large Scale Matrix Computations", run on shardwren.

Only the imports and the data loading differ from the original notebook
(fetch_mldata is gone from scikit-learn; shardwren.datasets reads the same MNIST).
Run: python examples/pywren_tutorial.py [--subset N] [--skip-train]
"""

import argparse
import itertools
import time
from operator import itemgetter

import numpy as np
from sklearn import metrics

from shardwren import matrix, pywren  # was: import pywren; import matrix
from shardwren.datasets import load_mnist  # was: sklearn.datasets.fetch_mldata
from shardwren.pywren import wrenconfig as wc  # was: import pywren.wrenconfig as wc

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--subset", type=int, default=0,
                    help="use the first N training and N/6 test images (default: all)")
parser.add_argument("--skip-train", action="store_true",
                    help="skip the training-accuracy part (its distance matrix is 14 GB on full MNIST)")
args = parser.parse_args()

DEFAULT_BUCKET = wc.default()['s3']['bucket']

# ## 1. Matrix Multiplication


def my_function(b):
    x = np.random.normal(0, b, 1024)
    A = np.random.normal(0, b, (1024, 1024))
    return np.dot(A, x)


pwex = pywren.default_executor()
res = pwex.map(my_function, np.linspace(0.1, 10, 100))
pywren.wait(res)
print("section 1:", len(res), "matrix-vector products, first norm", np.linalg.norm(res[0].result()))

# ## 2. Distributed Nearest Neighbor with Large Scale Matrix Multiplication

X_train, y, X_test, y_t = load_mnist()  # was: fetch_mldata('MNIST original')
if args.subset:
    X_train, y, X_test, y_t = X_train[:args.subset], y[:args.subset], X_test[:args.subset // 6], y_t[:args.subset // 6]
y_train = y[:, np.newaxis]
y_test = y_t[:, np.newaxis]

X_train_sharded = matrix.ShardedMatrix("x_train", shape=X_train.shape, bucket=DEFAULT_BUCKET, shard_sizes=[4000, 784])
X_train_sharded.shard_matrix(X_train, n_jobs=16)

X_test_sharded = matrix.ShardedMatrix("x_test", shape=X_test.shape, bucket=DEFAULT_BUCKET, shard_sizes=[4000, 784])
X_test_sharded.shard_matrix(X_test, n_jobs=16)


def compute_local_nearest_neighbor_labels(X_train, X_test, y_test, y_train):
    # compute a distance matrix
    train_norms = np.linalg.norm(X_train, axis=1)[:, np.newaxis] ** 2
    test_norms = np.linalg.norm(X_test, axis=1)[np.newaxis, :] ** 2
    return y_train[np.argmin(train_norms + -2*X_train.dot(X_test.T) + test_norms, axis=0)]


t = time.time()
y_test_pred = compute_local_nearest_neighbor_labels(X_train, X_test, y_test, y_train)
print("local numpy: %.1f s" % (time.time() - t))
print("Accuracy is ", metrics.accuracy_score(y_test_pred, y_test))

# create an "empty" ShardedMatrix (we will fill this Matrix in with pywren)
D_sharded = matrix.ShardedMatrix("D", shape=(X_train.shape[0], X_test.shape[0]), shard_sizes=[4000, 4000], bucket=DEFAULT_BUCKET)


def compute_pywren_nearest_neighbor_distance_matrix(block_pair, X_train_sharded, X_test_sharded, D_sharded):
    block0, block1 = block_pair
    # compute a distance matrix block
    X_train_block = X_train_sharded.get_block(block0, 0)
    X_test_block = X_test_sharded.get_block(block1, 0)
    train_norms = np.linalg.norm(X_train_block, axis=1)[:, np.newaxis] ** 2
    test_norms = np.linalg.norm(X_test_block, axis=1)[np.newaxis, :] ** 2
    D_block = train_norms + -2*X_train_block.dot(X_test_block.T) + test_norms
    D_sharded.put_block(block0, block1, D_block)
    return 0


pywren_distance_function = lambda bidx: compute_pywren_nearest_neighbor_distance_matrix(bidx, X_train_sharded, X_test_sharded, D_sharded)

t = time.time()
futures = pwex.map(pywren_distance_function, D_sharded.block_idxs)
pywren.wait(futures)
print("distance matrix map: %.1f s" % (time.time() - t))


def find_argmin(block_pair, D_sharded):
    D_block = D_sharded.get_block(*block_pair)
    offset = block_pair[0]*D_sharded.shard_sizes[0]
    return (block_pair[1], offset + np.argmin(D_block, axis=0), np.min(D_block, axis=0))


t = time.time()
futures = pwex.map(lambda x: find_argmin(x, D_sharded), sorted(D_sharded.block_idxs))
pywren.wait(futures)
results = [f.result() for f in futures]
print("argmin map: %.1f s" % (time.time() - t))


def compute_results_from_pywren(results):
    mins = []
    for _, group in itertools.groupby(sorted(results, key=itemgetter(0)), key=itemgetter(0)):
        group = list(group)
        argmins = np.vstack([g[1] for g in group])
        argminmin = np.argmin(np.vstack([g[2] for g in group]), axis=0)
        mins.append(argmins[argminmin, np.arange(argmins.shape[1])])
    return np.hstack(mins)


y_test_pred_pywren = y_train[compute_results_from_pywren(results)]
print("Accuracy is ", metrics.accuracy_score(y_test, y_test_pred_pywren))

# ### Computing Training 1-NN
if not args.skip_train:
    D_train_sharded = matrix.ShardedMatrix("D", shape=(X_train.shape[0], X_train.shape[0]), shard_sizes=[4000, 4000], bucket=DEFAULT_BUCKET)
    pywren_train_distance_function = lambda bidx: compute_pywren_nearest_neighbor_distance_matrix(bidx, X_train_sharded, X_train_sharded, D_train_sharded)
    futures = pwex.map(pywren_train_distance_function, D_train_sharded.block_idxs)
    pywren.wait(futures)
    results = [f.result() for f in futures]
    futures = pwex.map(lambda x: find_argmin(x, D_train_sharded), sorted(D_train_sharded.block_idxs))
    pywren.wait(futures)
    results = [f.result() for f in futures]
    print("Training Accuracy is ", metrics.accuracy_score(y_train, y_train[compute_results_from_pywren(results)]))
    D_train_sharded.delete()
else:
    D_sharded.delete()
pwex.shutdown()
