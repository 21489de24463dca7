"""MNIST (LeCun, Cortes, Burges) from its four original IDX files, without torchvision.

The files are read from ``L2OBENCH_DATA_DIR/mnist/`` (or, as before there was a
directory per data set, directly from ``L2OBENCH_DATA_DIR``); without the
variable they are downloaded once from the usual mirrors into the user cache,
checked against the mirrors' MD5 sums.  In both cases the decompressed bytes are
checked against the SHA-256 of the originals, so a re-gzipped or decompressed
copy is accepted and a corrupted or foreign one is not.

The split is fixed: the first 50,000 training images are ``"train"``, the last
10,000 are ``"validation"``, and the 10,000 t10k images are ``"test"``.
"""
from l2obench.api import DataFile, IDXDataset

#: Download mirrors, tried in order (torchvision's, Google's CVDF copy, the original site).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def gz_file(name: str, md5_gz: str, sha256: str) -> DataFile:
    """An IDX file as the mirrors serve it: gzipped (the download checked by its MD5), the
    decompressed bytes checked by their SHA-256."""
    return DataFile(name, f"sha256:{sha256}", gunzip=True, download_hash=f"md5:{md5_gz}")


FILES = {
    "train-images": gz_file("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                          "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels": gz_file("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                          "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test-images": gz_file("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                         "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test-labels": gz_file("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                         "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

#: split -> (file pair, its examples)
SPLITS = {
    "train": ("train", slice(0, 50_000)),
    "validation": ("train", slice(50_000, 60_000)),
    "test": ("test", slice(0, 10_000)),
}

MNIST = IDXDataset(
    "mnist", "MNIST handwritten digits, 28x28 grey (train 50,000 / validation 10,000 / test 10,000)",
    FILES, SPLITS, MIRRORS, classes=10, shape=(1, 28, 28), in_root=True,
)
