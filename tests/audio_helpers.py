"""What the speech tests share: they need espeak-ng, a Debian package that `make install` and
`make test` install with apt. Only a machine where that failed (no apt, no network) skips them,
and the skip says so."""

import pytest

from polymodal.data.speech_synthesis import espeak_available

ESPEAK_MISSING = "espeak-ng is missing and `make install` could not install it (apt-get install -y espeak-ng)"
needs_espeak = pytest.mark.skipif(not espeak_available(), reason=ESPEAK_MISSING)


def require_espeak() -> None:
    """In a fixture: skip its tests, with the reason, where espeak-ng is missing."""
    if not espeak_available():
        pytest.skip(ESPEAK_MISSING)
