"""One quick connectivity check before a download, so that a machine without network fails in seconds.

huggingface_hub retries network errors with back-off (about 25 s before its error when names do not resolve, far
longer when packets are dropped); a plain download URL waits 30 s. :func:`probe_server` sends one request without
retries and waits :data:`PROBE_TIMEOUT_S`. Any HTTP answer, even an error status, means the network is up and the
download proceeds as usual. The request goes through the same client as the download (huggingface_hub's session, or
urllib for URLs), so proxies and certificates configured for it apply. Used before downloading encoder weights
(:mod:`irepa.encoders.weights`) and a VAE (:func:`irepa.data.vae.load_vae`).
"""

from __future__ import annotations

from irepa.errors import WeightsNotFoundError, first_line

__all__ = ["PROBE_TIMEOUT_S", "NoNetworkError", "probe_server"]

#: Seconds the probe waits for the server (connect + first answer).
PROBE_TIMEOUT_S = 5.0


class NoNetworkError(WeightsNotFoundError):
    """The server of a download cannot be reached (no network, DNS failure, firewall, proxy refusing).

    Args:
        server: What was asked (a URL, or the Hub's endpoint).
        exc: The transport's error.
        fix: How to get the files without this machine's network (appended after the reason).

    Attributes:
        reason: What failed, in a few words (``no network: cannot reach https://huggingface.co within 5 s (...)``).
    """

    def __init__(self, server: str, exc: BaseException, fix: str) -> None:
        self.reason = (
            f"no network: cannot reach {server} within {PROBE_TIMEOUT_S:g} s ({first_line(exc, max_chars=160)})"
        )
        super().__init__(f"{self.reason}; {fix}")


def probe_server(url: str | None, *, fix: str) -> None:
    """One request, without retries, to the server a download will use.

    Args:
        url: The download URL (a HEAD request; non-HTTP schemes need no network and pass), or ``None`` for the
            Hugging Face Hub (its endpoint, through huggingface_hub's own session).
        fix: The :class:`NoNetworkError`'s advice.

    Raises:
        NoNetworkError: No answer within :data:`PROBE_TIMEOUT_S`.
    """
    if url is not None:
        import urllib.error
        import urllib.parse
        import urllib.request

        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return  # file:// and friends need no network
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S):
                return
        except urllib.error.HTTPError:
            return  # the server answered
        except (urllib.error.URLError, OSError) as exc:
            raise NoNetworkError(url, exc, fix) from exc
    from huggingface_hub import constants, errors
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except errors.OfflineModeIsEnabled:
        return  # huggingface_hub's own offline switch (HF_HUB_OFFLINE): the download reports it at once
    except Exception as exc:  # the transport's errors (connect, DNS, TLS, proxy, timeout); statuses do not raise
        raise NoNetworkError(constants.ENDPOINT, exc, fix) from exc
