"""Case (3b): the app of case (3) (``hello.py``) served by Bascule's server
module (``bascule.worker``) instead of stock hypercorn, with hypercorn's
default settings; ``python hello_bascule.py PORT``."""

import sys
from functools import partial

import trio
from bascule.worker import listen
from hello import app
from hypercorn.config import Config

if __name__ == "__main__":
    config = Config()
    config.bind = [f"127.0.0.1:{sys.argv[1]}"]
    config.accesslog = None
    trio.run(partial(listen, app, config))
