"""Who the viewer serves: loopback clients only, unless whoever started it chose an address on purpose.

``streamlit run apps/viewer.py`` reads the listening address from ``apps/.streamlit/config.toml`` (Streamlit's
script-level config, read wherever it is started): 127.0.0.1. ``canon-pl view`` starts it on 127.0.0.1 too. Choosing
an address (``--server.address 0.0.0.0``, ``STREAMLIT_SERVER_ADDRESS``) exposes it on purpose. Should the server
still listen everywhere without a choice (a Streamlit too old for script-level config, or that file removed), the
viewer (``apps/viewer.py``) refuses, page by page, a client from another machine.
"""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"
EXPOSE_HINT = ("to open it to the network on purpose, start it with `--server.address 0.0.0.0` (and keep it confined "
               "to its folder: no --any-folder)")


def exposure_refusal(chosen_address: str | None, client_ip: str | None) -> str | None:
    """Why a page must not be shown to this client, or ``None`` to serve it.

    Args:
        chosen_address: the ``server.address`` someone set (flag, config file, environment), ``None``/``""`` when it
            is Streamlit's default: every interface.
        client_ip: the client's address as Streamlit reports it: ``None`` for some loopback clients, an IPv4-mapped
            IPv6 address (``::ffff:127.0.0.1``) for others when it listens on every interface.
    """
    if chosen_address or client_ip is None or is_loopback(client_ip):
        return None
    return (f"This viewer was started without a listening address, so it listens on every network interface, and "
            f"you reach it from {client_ip}. It serves pages to this machine only: start it with `canon-pl view` "
            f"(127.0.0.1 from any folder) or from the repository root; {EXPOSE_HINT}.")


def is_loopback(client_ip: str) -> bool:
    """Whether ``client_ip`` is this machine (``127.0.0.0/8``, ``::1``, or either mapped into IPv6); an unparsable
    address is not."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


__all__ = ["EXPOSE_HINT", "LOOPBACK", "exposure_refusal", "is_loopback"]
