"""The limits of the readers (sizes, depths, counts), in one place."""

import stat

MIB = 1 << 20
MAX_JSON_BYTES = 64 * MIB
MAX_JSON_DEPTH = 200
BOMB_FLOOR_BYTES = 64 * MIB  # a member may inflate past this only at <= BOMB_RATIO
BOMB_RATIO = 100  # Keras stores members (ratio 1); deflate reaches ~1000 only on junk
MAX_MEMBERS = 10_000
MAX_H5_OBJECTS = 1_000_000
MAX_H5_DEPTH = 64
COPIES = 5  # weights, m, v, EMA averages, gradient accumulators
SCALAR_SLACK_BYTES = MIB  # step counts, u-products, learning rates
BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
                   6: "scaleoffset", 32000: "lzf"}
KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
