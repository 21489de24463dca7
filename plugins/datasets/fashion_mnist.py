"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, Zalando Research; MIT licence): 28x28
grey images of 10 clothing classes, in MNIST's IDX format and file names.

The files are read from ``L2OBENCH_DATA_DIR/fashion-mnist/``; without the variable
they are downloaded once from Zalando's mirrors into the user cache, checked
against the MD5 sums of the upstream .gz files.  Either way the decompressed
bytes are checked against the SHA-256 of the originals, so any gzip of the same
files is accepted.

The split is MNIST's: the first 50,000 training images are ``"train"``, the last
10,000 ``"validation"``, the 10,000 t10k images ``"test"``.
"""
from l2obench.api import IDXDataset

from .mnist import SPLITS, gz_file

#: Zalando's S3 bucket (torchvision's source), then the project's repository.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


FILES = {
    "train-images": gz_file("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                          "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels": gz_file("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
                          "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test-images": gz_file("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
                         "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test-labels": gz_file("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
                         "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

FASHION_MNIST = IDXDataset(
    "fashion-mnist", "Fashion-MNIST clothing, 28x28 grey (train 50,000 / validation 10,000 / test 10,000)",
    FILES, SPLITS, MIRRORS, classes=10, shape=(1, 28, 28),
)
