"""The client side never imports torch."""

from __future__ import annotations

import subprocess
import sys


def test_the_client_and_the_cli_import_without_torch():
    script = (
        "import sys\n"
        "import framewire.client, framewire.cli\n"
        "framewire.cli.build_parser().parse_args(['predict', '--model', 'm', 'x.jpg'])\n"
        "from framewire.client import image_message\n"
        "import numpy as np\n"
        "image_message(np.zeros((4, 4, 3), np.uint8))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_images_become_messages():
    import numpy as np
    import pytest

    from framewire.client import image_message

    assert image_message(b"\xff\xd8jpeg").encoded == b"\xff\xd8jpeg"
    tensor = image_message(np.zeros((2, 3, 3), np.uint8)).tensor
    assert list(tensor.shape) == [2, 3, 3] and len(tensor.data) == 18
    assert list(image_message(np.zeros((3, 4, 4), np.float32)).tensor.shape) == [3, 4, 4]
    with pytest.raises(ValueError, match="HxWx3"):
        image_message(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        image_message(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(TypeError, match="cannot send"):
        image_message(42)
