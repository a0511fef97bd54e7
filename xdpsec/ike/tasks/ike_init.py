"""IKE_SA_INIT (RFC 7296 §1.2): proposals, key exchange, nonces, NAT detection; then the IKE SA has keys.

    HDR, SAi1, KEi, Ni, N(NAT_DETECTION_SOURCE_IP), N(NAT_DETECTION_DESTINATION_IP),
         [N(SIGNATURE_HASH_ALGORITHMS)]  -->
                  <--  HDR, SAr1, KEr, Nr, N(NAT_DETECTION_*), [CERTREQ], [N(SIGNATURE_HASH_ALGORITHMS)]

The initiator sends its KE for the group of its first proposal; a responder preferring another group answers
INVALID_KE_PAYLOAD with that group and the initiator starts over with it (§1.3, §2.7), Message ID zero again.
NAT detection (§2.23): each side hashes the SPIs with the addresses and ports it sends from and to; a
mismatch on receipt means a NAT rewrote them, and both sides then move to UDP port 4500 (RFC 3948) from
IKE_AUTH on. With `encap` forced we send a wrong source hash on purpose, as strongSwan does, so the peer also
believes there is a NAT.
"""

from __future__ import annotations

import hashlib

from xdpsec.crypto.auth import SUPPORTED_HASHES, TrustStore
from xdpsec.crypto.dh import KeyExchangeError, new_key_exchange
from xdpsec.ike import wire
from xdpsec.ike.conf import AuthMethod, Fragmentation
from xdpsec.ike.consts import CertEncoding, ExchangeType, NotifyType, PayloadType, ProtocolId
from xdpsec.ike.events import Failure
from xdpsec.ike.keys import derive_ike_keys
from xdpsec.ike.tasks import Inbound, Status, Task, ike_intermediate, notify, notify_name, payload
from xdpsec.ike.tasks.proposal import accept, answer, ike_offer, ike_suite, select

#: Our nonce length: 32 octets, at least half the PRF key size for every PRF we offer (§2.10).
NONCE_LEN = 32
NONCE_MIN, NONCE_MAX = 16, 256  # §3.9
#: Fresh cookies we follow before giving up: a responder (or whoever spoofs it) must not keep us looping (§2.6).
COOKIE_TRIES = 3


def nat_hash(ispi: int, rspi: int, addr, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port) of NAT_DETECTION_*_IP (§2.23)."""
    return hashlib.sha1(ispi.to_bytes(8, "big") + rspi.to_bytes(8, "big") + addr.packed
                        + port.to_bytes(2, "big"), usedforsecurity=False).digest()


def sig_hash_notify() -> wire.Payload:
    """RFC 7427 §4: the hashes we can verify. They do not depend on our key (see Signer.hash_algorithms)."""
    return notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"".join(int(a).to_bytes(2, "big") for a in SUPPORTED_HASHES))



def initiator_share(group: int, ke: wire.KE):
    """As a responder: our key exchange in the chosen `group` and the secret shared with the initiator's KE,
    for IKE_SA_INIT and an IKE SA rekey the peer initiated (§1.3.2). A KE of another group is refused with our
    preferred one (§1.3: "the responder MUST reject the request and indicate its preferred ... group")."""
    if ke.group != group:
        raise wire.IkeError(NotifyType.INVALID_KE_PAYLOAD, f"KE of group {ke.group}, we want {group}",
                            group.to_bytes(2, "big"))
    kex = new_key_exchange(group)
    try:
        return kex, kex.shared(ke.data)
    except KeyExchangeError as e:
        raise wire.IkeError(NotifyType.INVALID_SYNTAX, f"key exchange: {e}") from None


class BadShare(Exception):
    """The responder's KE or nonce cannot be used; the message says what it lied about."""


def responder_share(kex, group: int, chosen_ke: int, ke: wire.KE, nonce: wire.Nonce) -> bytes:
    """Check a responder's KE and Nonce against the group we sent and the proposal it chose (RFC 7296 §1.2,
    §3.4, §3.9) and return the shared secret: IKE_SA_INIT and an IKE SA rekey initiated by us (§1.3.2) alike."""
    if ke.group != group or chosen_ke != group:
        raise BadShare(f"responder answered with group {ke.group}, we sent {group}")
    if not NONCE_MIN <= len(nonce.data) <= NONCE_MAX:
        raise BadShare("responder nonce of bad length")
    try:
        return kex.shared(ke.data)
    except KeyExchangeError as e:
        raise BadShare(f"responder key exchange: {e}") from None

class IkeInit(Task):
    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self, ike, *, initiator: bool):
        super().__init__(ike, initiator=initiator)
        self.group = ike.conn.proposals[0].ke if initiator else 0
        self.kex = None
        self.cookie = b""    # §2.6: echoed in front of everything once the responder asked for it
        self.cookie_tries = 0
        self.chosen = None   # (our IkeProposal, the peer's wire.Proposal) on the responder
        self.intermediate = False  # responder: the initiator sent INTERMEDIATE_EXCHANGE_SUPPORTED

    # --- shared ---------------------------------------------------------------------------------------------

    def _nat_notifies(self, out: list[wire.Payload], rspi: int) -> None:
        ike = self.ike
        src = nat_hash(ike.ispi, rspi, *ike.local)
        if ike.conn.encap:
            src = ike.services.rng(len(src))  # claim a NAT we are not behind (§2.23 allows it, RFC 3948 needs it)
        out.append(notify(NotifyType.NAT_DETECTION_SOURCE_IP, src))
        out.append(notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(ike.ispi, rspi, *ike.remote)))

    def _detect_nat(self, inbound: Inbound, rspi: int) -> None:
        """Compare the peer's hashes with the addresses we see: theirs (source) and ours (destination)."""
        ike = self.ike
        sources = [n.data for n in inbound.notifies() if n.type == NotifyType.NAT_DETECTION_SOURCE_IP]
        dest = inbound.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
        if not sources or dest is None:
            ike.nat_local = ike.conn.encap  # the peer does not do NAT-T (§2.23 makes it optional)
            return
        ike.nat_remote = nat_hash(ike.ispi, rspi, *ike.remote) not in sources
        ike.nat_local = ike.conn.encap or dest.data != nat_hash(ike.ispi, rspi, *ike.local)

    def _peer_extras(self, inbound: Inbound) -> None:
        ike = self.ike
        sha = inbound.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if sha is not None:
            ike.peer_hash_algorithms = tuple(int.from_bytes(sha.data[i:i + 2], "big")
                                             for i in range(0, len(sha.data) - 1, 2))
        ike.peer_certreq = bool(inbound.all(PayloadType.CERTREQ))
        ike.peer_fragmentation = inbound.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None

    def _wants_sig_hashes(self) -> bool:
        conn = self.ike.conn
        return AuthMethod.PUBKEY in (conn.local.method, conn.remote.method)

    def _derive(self, proposal, shared: bytes) -> None:
        from xdpsec.ike.sa import Crypto, State

        ike = self.ike
        keys = derive_ike_keys(proposal.prf, proposal.encr, proposal.encr_key_bits, proposal.integ,
                               ike.ni, ike.nr, shared, ike.ispi, ike.rspi)
        ike.crypto = Crypto.create(proposal, keys, ike.initiator)
        ike.state = State.CONNECTING
        ike_intermediate.start(ike, proposal)  # RFC 9370: additional key exchanges before IKE_AUTH

    # --- initiator ------------------------------------------------------------------------------------------

    def build(self, out: list[wire.Payload]) -> None:
        if self.initiator:
            self._build_request(out)
        else:
            self._build_response(out)

    def _build_request(self, out: list[wire.Payload]) -> None:
        ike = self.ike
        if self.kex is None or self.kex.group != self.group:
            self.kex = new_key_exchange(self.group)
        if not ike.ni:  # §2.6: a retry carries "all other payloads unchanged"; the cookie covers Ni
            ike.ni = ike.services.rng(NONCE_LEN)
        if self.cookie:
            out.append(notify(NotifyType.COOKIE, self.cookie))  # §2.6: the first payload
        out += [payload(PayloadType.SA, ike_offer(ike.conn.proposals)),
                payload(PayloadType.KE, wire.KE(self.group, self.kex.public())),
                payload(PayloadType.NONCE, wire.Nonce(ike.ni))]
        self._nat_notifies(out, 0)
        if ike.conn.fragmentation != Fragmentation.NO:
            out.append(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))  # RFC 7383 §2.3
        if self._wants_sig_hashes():
            out.append(sig_hash_notify())
        if any(p.addke for p in ike.conn.proposals):
            out.append(notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))  # RFC 9370 §2.2.1, RFC 9242 §3

    def process(self, inbound: Inbound) -> Status:
        if not self.initiator:
            self._process_request(inbound)
            return Status.DONE
        return self._process_response(inbound)

    def _fail(self, reason: str) -> Status:
        self.ike.services.emit(Failure(self.ike.name, reason))
        self.ike.die(reason)
        return Status.FAILED

    def _process_response(self, inbound: Inbound) -> Status:
        ike = self.ike
        cookie = inbound.notify(NotifyType.COOKIE)
        if cookie is not None and cookie.data != self.cookie and 1 <= len(cookie.data) <= 64 \
                and self.cookie_tries < COOKIE_TRIES:
            # §2.6: the responder is under load; ask again with its cookie (a fresh one if ours had expired).
            self.cookie, self.cookie_tries = cookie.data, self.cookie_tries + 1
            ike.services.count("cookie_retry")
            ike.rspi = 0
            ike.reset_message_ids()
            return Status.RETRY
        invalid_ke = inbound.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            return self._retry_group(invalid_ke.data)
        error = inbound.error()
        if error is not None:
            return self._fail(notify_name(error))
        sa, ke, nonce = (inbound.first(t) for t in (PayloadType.SA, PayloadType.KE, PayloadType.NONCE))
        if sa is None or ke is None or nonce is None:
            return self._fail("IKE_SA_INIT response without SA, KE or Nonce")
        chosen = accept(sa, ike.conn.proposals, ike_suite, ProtocolId.IKE)
        if chosen is None:
            return self._fail("responder chose a proposal we did not offer")
        proposal = chosen[0]
        if proposal.addke and inbound.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is None:
            return self._fail("responder chose additional key exchanges but cannot run IKE_INTERMEDIATE")
        try:
            shared = responder_share(self.kex, self.group, proposal.ke, ke, nonce)
        except BadShare as e:
            return self._fail(str(e))
        ike.nr = nonce.data
        self._derive(proposal, shared)
        self._detect_nat(inbound, ike.rspi)
        self._peer_extras(inbound)
        if ike.nat:
            ike.float_to_natt()
        return Status.DONE

    def _retry_group(self, data: bytes) -> Status:
        """INVALID_KE_PAYLOAD (§1.3): start over with the group the responder named, if we offered it."""
        ike = self.ike
        group = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
        offered = {p.ke for p in ike.conn.proposals}
        if group == self.group or group not in offered:
            return self._fail(f"INVALID_KE_PAYLOAD asking for group {group}, which we did not offer")
        ike.services.count("invalid_ke_retry")
        self.group = group
        ike.rspi = 0
        ike.reset_message_ids()
        return Status.RETRY

    # --- responder ------------------------------------------------------------------------------------------

    def _process_request(self, inbound: Inbound) -> None:
        ike = self.ike
        sa, ke, nonce = (inbound.first(t) for t in (PayloadType.SA, PayloadType.KE, PayloadType.NONCE))
        if sa is None or ke is None or nonce is None:
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, "IKE_SA_INIT without SA, KE or Nonce")
        if not NONCE_MIN <= len(nonce.data) <= NONCE_MAX:
            raise wire.IkeError(NotifyType.INVALID_SYNTAX, f"nonce of {len(nonce.data)} octets")
        # RFC 9370 §2.2.1: additional key exchanges only with a peer that can run IKE_INTERMEDIATE (RFC 9242 §3).
        self.intermediate = inbound.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None
        ours = [p for p in ike.conn.proposals if self.intermediate or not p.addke]
        chosen = select(sa, ours, ike_suite, ProtocolId.IKE)
        if chosen is None:
            raise wire.IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "no proposal in common")
        proposal = chosen[0]
        self.kex, shared = initiator_share(proposal.ke, ke)
        self.chosen = chosen
        ike.ni, ike.nr = nonce.data, ike.services.rng(NONCE_LEN)
        self._detect_nat(inbound, 0)  # the request's header carried no responder SPI
        self._peer_extras(inbound)
        self._derive(proposal, shared)

    def _build_response(self, out: list[wire.Payload]) -> None:
        ike = self.ike
        mine, theirs = self.chosen
        out += [payload(PayloadType.SA, answer(theirs.num, ProtocolId.IKE, b"", ike_suite(mine))),
                payload(PayloadType.KE, wire.KE(mine.ke, self.kex.public())),
                payload(PayloadType.NONCE, wire.Nonce(ike.nr))]
        self._nat_notifies(out, ike.rspi)
        if ike.peer_fragmentation and ike.conn.fragmentation != Fragmentation.NO:
            out.append(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))  # RFC 7383 §2.3: only if asked
        remote = ike.conn.remote
        if remote.method == AuthMethod.PUBKEY and remote.cacerts:
            out.append(payload(PayloadType.CERTREQ, wire.CertReq(CertEncoding.X509_SIGNATURE,
                                                                 TrustStore(remote.cacerts).certreq_hashes())))
        if self._wants_sig_hashes():
            out.append(sig_hash_notify())
        if self.intermediate:
            out.append(notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))  # RFC 9242 §3: we support it too
