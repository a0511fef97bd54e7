"""IKEv2 protocol numbers by name: the vocabulary of xdpsec/ike/wire.py and everything above it.

Values are those of RFC 7296 §3 and the IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" registry;
extensions cite their RFC. Only what the core uses or must recognise is listed: a number that is not here is
still carried as a plain int, so an unknown value is never a reason to crash.
"""

from __future__ import annotations

import enum


class ExchangeType(enum.IntEnum):
    """IKE header Exchange Type (RFC 7296 §3.1)."""

    IKE_SA_INIT = 34       # §1.2: negotiate the IKE SA, key exchange, nonces
    IKE_AUTH = 35          # §1.2: identities, authentication, the first child SA
    CREATE_CHILD_SA = 36   # §1.3: new or rekeyed child SAs, IKE SA rekey
    INFORMATIONAL = 37     # §1.4: delete, notify, liveness
    IKE_SESSION_RESUME = 38  # RFC 5723
    IKE_INTERMEDIATE = 43  # RFC 9242: between IKE_SA_INIT and IKE_AUTH (additional key exchanges)
    IKE_FOLLOWUP_KE = 44   # RFC 9370 §2.2.4: additional key exchanges after a CREATE_CHILD_SA


class HeaderFlag(enum.IntFlag):
    """IKE header Flags (RFC 7296 §3.1); the other five bits are reserved: zero on sending, ignored on receipt."""

    INITIATOR = 0x08  # sent by the original initiator of the IKE SA
    VERSION = 0x10    # "I could speak a higher major version": never set by IKEv2 implementations
    RESPONSE = 0x20   # this message answers a request with the same Message ID


#: The IKE header's Version field: major 2, minor 0 (RFC 7296 §3.1).
IKE_VERSION = 0x20
IKE_MAJOR_VERSION = 2


class PayloadType(enum.IntEnum):
    """Next Payload values (RFC 7296 §3.2)."""

    NONE = 0       # end of the chain
    SA = 33        # §3.3 Security Association
    KE = 34        # §3.4 Key Exchange
    IDi = 35       # §3.5 Identification - Initiator
    IDr = 36       # §3.5 Identification - Responder
    CERT = 37      # §3.6 Certificate
    CERTREQ = 38   # §3.7 Certificate Request
    AUTH = 39      # §3.8 Authentication
    NONCE = 40     # §3.9 Nonce (Ni, Nr)
    NOTIFY = 41    # §3.10 Notify
    DELETE = 42    # §3.11 Delete
    VENDOR = 43    # §3.12 Vendor ID
    TSi = 44       # §3.13 Traffic Selector - Initiator
    TSr = 45       # §3.13 Traffic Selector - Responder
    SK = 46        # §3.14 Encrypted and Authenticated
    CP = 47        # §3.15 Configuration
    EAP = 48       # §3.16 Extensible Authentication
    SKF = 53       # RFC 7383 §2.5 Encrypted and Authenticated Fragment


class NotifyType(enum.IntEnum):
    """Notify Message Types (RFC 7296 §3.10.1). Below 16384 errors, from 16384 status."""

    UNSUPPORTED_CRITICAL_PAYLOAD = 1   # data: the one-octet payload type
    INVALID_IKE_SPI = 4                # message for an IKE SA we do not know
    INVALID_MAJOR_VERSION = 5          # header major version is not 2
    INVALID_SYNTAX = 7                 # malformed message (also used for anything that fails to parse)
    INVALID_MESSAGE_ID = 9             # message ID outside the window
    INVALID_SPI = 11                   # ESP/AH packet for an unknown SPI
    NO_PROPOSAL_CHOSEN = 14            # no acceptable proposal
    INVALID_KE_PAYLOAD = 17            # data: the two-octet group the responder wants
    AUTHENTICATION_FAILED = 24         # AUTH did not verify
    SINGLE_PAIR_REQUIRED = 34          # TS narrowing requires a single address pair
    NO_ADDITIONAL_SAS = 35             # no more child SAs on this IKE SA
    INTERNAL_ADDRESS_FAILURE = 36      # no address could be assigned (CP)
    FAILED_CP_REQUIRED = 37            # a CP request was required
    TS_UNACCEPTABLE = 38               # no acceptable traffic selectors
    INVALID_SELECTORS = 39             # packet on a child SA did not match its selectors
    UNACCEPTABLE_ADDRESSES = 40        # RFC 4555 (MOBIKE)
    UNEXPECTED_NAT_DETECTED = 41       # RFC 4555 (MOBIKE)
    USE_ASSIGNED_HoA = 42              # RFC 5026
    TEMPORARY_FAILURE = 43             # §2.25: retry later (e.g. a rekey collision)
    CHILD_SA_NOT_FOUND = 44            # §2.25: the child SA to rekey does not exist
    STATE_NOT_FOUND = 47               # RFC 9370 §2.2.4: an IKE_FOLLOWUP_KE we cannot link to a CREATE_CHILD_SA

    INITIAL_CONTACT = 16384            # §2.4: forget older IKE SAs with the same peer identity
    SET_WINDOW_SIZE = 16385            # §2.3: data: four-octet window size
    ADDITIONAL_TS_POSSIBLE = 16386     # §2.9: narrowed, other selectors could get another SA
    IPCOMP_SUPPORTED = 16387           # §2.22
    NAT_DETECTION_SOURCE_IP = 16388    # §2.23: data: SHA-1(SPIi | SPIr | IP | port)
    NAT_DETECTION_DESTINATION_IP = 16389  # §2.23
    COOKIE = 16390                     # §2.6: stateless anti-DoS cookie
    USE_TRANSPORT_MODE = 16391         # §1.3.1: request a transport mode child SA
    HTTP_CERT_LOOKUP_SUPPORTED = 16392  # §3.6
    REKEY_SA = 16393                   # §1.3.3: this CREATE_CHILD_SA rekeys the SA whose SPI is given
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394  # §1.3.1
    NON_FIRST_FRAGMENTS_ALSO = 16395   # §1.3.1
    MOBIKE_SUPPORTED = 16396           # RFC 4555
    ADDITIONAL_IP4_ADDRESS = 16397     # RFC 4555
    ADDITIONAL_IP6_ADDRESS = 16398     # RFC 4555
    NO_ADDITIONAL_ADDRESSES = 16399    # RFC 4555
    UPDATE_SA_ADDRESSES = 16400        # RFC 4555
    COOKIE2 = 16401                    # RFC 4555
    NO_NATS_ALLOWED = 16402            # RFC 4555
    AUTH_LIFETIME = 16403              # RFC 4478
    MULTIPLE_AUTH_SUPPORTED = 16404    # RFC 4739
    ANOTHER_AUTH_FOLLOWS = 16405       # RFC 4739
    REDIRECT_SUPPORTED = 16406         # RFC 5685
    REDIRECT = 16407                   # RFC 5685
    REDIRECTED_FROM = 16408            # RFC 5685
    EAP_ONLY_AUTHENTICATION = 16417    # RFC 5998
    CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427: data: two-octet hash algorithm IDs
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438  # RFC 9242
    ADDITIONAL_KEY_EXCHANGE = 16441    # RFC 9370
    USE_AGGFRAG = 16442                # RFC 9347


#: Notify types below this are errors (RFC 7296 §3.10.1); an unrecognised error in a response fails the request.
ERROR_TYPES_END = 16384


class TransformType(enum.IntEnum):
    """Transform Type (RFC 7296 §3.3.2; RFC 9370 renames type 4 and adds 6..12)."""

    ENCR = 1    # encryption algorithm
    PRF = 2     # pseudorandom function
    INTEG = 3   # integrity algorithm
    KE = 4      # key exchange method (was "Diffie-Hellman group")
    ESN = 5     # extended sequence numbers
    ADDKE1 = 6  # RFC 9370 additional key exchanges 1..7
    ADDKE2 = 7
    ADDKE3 = 8
    ADDKE4 = 9
    ADDKE5 = 10
    ADDKE6 = 11
    ADDKE7 = 12


class TransformAttr(enum.IntEnum):
    """Transform attribute types (RFC 7296 §3.3.5)."""

    KEY_LENGTH = 14  # key length in bits, always in the fixed-length TV format


class EncrId(enum.IntEnum):
    """Transform Type 1 IDs (RFC 7296 §3.3.2, IANA)."""

    DES = 2                # RFC 2405, obsolete
    TRIPLE_DES = 3         # RFC 2451 (3DES), RFC 8247: SHOULD NOT
    NULL = 11              # RFC 2410, ESP only
    AES_CBC = 12           # RFC 3602
    AES_CTR = 13           # RFC 3686
    AES_CCM_8 = 14         # RFC 4309
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    AES_GCM_8 = 18         # RFC 4106 / RFC 5282 (8-octet ICV)
    AES_GCM_12 = 19        # 12-octet ICV
    AES_GCM_16 = 20        # 16-octet ICV
    NULL_AUTH_AES_GMAC = 21  # RFC 4543, ESP only
    CHACHA20_POLY1305 = 28  # RFC 7634


class PrfId(enum.IntEnum):
    """Transform Type 2 IDs."""

    HMAC_MD5 = 1       # RFC 2104, obsolete
    HMAC_SHA1 = 2      # RFC 2104
    AES128_XCBC = 4    # RFC 4434
    HMAC_SHA2_256 = 5  # RFC 4868
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    AES128_CMAC = 8    # RFC 4615


class IntegId(enum.IntEnum):
    """Transform Type 3 IDs."""

    NONE = 0               # with AEAD ciphers
    HMAC_MD5_96 = 1        # RFC 2403, obsolete
    HMAC_SHA1_96 = 2       # RFC 2404
    AES_XCBC_96 = 5        # RFC 3566
    AES_CMAC_96 = 8        # RFC 4494
    HMAC_SHA2_256_128 = 12  # RFC 4868
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class KeId(enum.IntEnum):
    """Transform Type 4 IDs: key exchange methods (IANA; RFC 9370 also uses them for ADDKE*)."""

    NONE = 0          # RFC 9370: "no additional key exchange" in an ADDKE transform
    MODP768 = 1       # RFC 7296 appendix B, obsolete
    MODP1024 = 2      # RFC 7296 appendix B, RFC 8247: SHOULD NOT
    MODP1536 = 5      # RFC 3526
    MODP2048 = 14     # RFC 3526
    MODP3072 = 15
    MODP4096 = 16
    MODP6144 = 17
    MODP8192 = 18
    ECP256 = 19       # RFC 5903
    ECP384 = 20
    ECP521 = 21
    CURVE25519 = 31   # RFC 8031
    CURVE448 = 32
    ML_KEM_512 = 35   # draft-ietf-ipsecme-ikev2-mlkem (IANA early allocation)
    ML_KEM_768 = 36
    ML_KEM_1024 = 37


class EsnId(enum.IntEnum):
    """Transform Type 5 IDs."""

    NO_ESN = 0
    ESN = 1


class ProtocolId(enum.IntEnum):
    """Security Protocol Identifier of proposals, Notify and Delete payloads (RFC 7296 §3.3.1)."""

    IKE = 1
    AH = 2
    ESP = 3


#: SPI size in octets of each protocol once the SA exists (RFC 7296 §3.3.1); IKE_SA_INIT proposals carry none.
SPI_SIZE = {ProtocolId.IKE: 8, ProtocolId.AH: 4, ProtocolId.ESP: 4}


class IdType(enum.IntEnum):
    """ID Type of IDi/IDr (RFC 7296 §3.5)."""

    IPV4_ADDR = 1    # four octets
    FQDN = 2         # "example.com", no terminator
    RFC822_ADDR = 3  # "user@example.com"
    IPV6_ADDR = 5    # sixteen octets
    DER_ASN1_DN = 9  # DER of an X.500 Name
    DER_ASN1_GN = 10  # DER of an X.509 GeneralName
    KEY_ID = 11      # opaque octets
    NULL = 13        # RFC 7619


class AuthMethodId(enum.IntEnum):
    """Auth Method of the AUTH payload (RFC 7296 §3.8, IANA)."""

    RSA_SIG = 1            # PKCS#1 v1.5 with SHA-1 over the signed octets
    SHARED_KEY_MIC = 2     # §2.15: prf(prf(secret, "Key Pad for IKEv2"), octets)
    DSS = 3                # DSS with SHA-1
    ECDSA_SHA256_P256 = 9  # RFC 4754
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    GSPAM = 12             # RFC 6467
    NULL = 13              # RFC 7619
    DIGITAL_SIGNATURE = 14  # RFC 7427: AlgorithmIdentifier + signature


class TsType(enum.IntEnum):
    """Traffic selector types (RFC 7296 §3.13.1)."""

    IPV4_ADDR_RANGE = 7  # selector length 16
    IPV6_ADDR_RANGE = 8  # selector length 40


class CertEncoding(enum.IntEnum):
    """Certificate Encoding of CERT and CERTREQ (RFC 7296 §3.6)."""

    PKCS7_X509 = 1           # unspecified in IKEv2
    PGP = 2
    DNS_SIGNED_KEY = 3
    X509_SIGNATURE = 4       # a DER X.509 certificate; in CERTREQ: SHA-1 hashes of trusted CA public keys
    KERBEROS_TOKEN = 6
    CRL = 7
    ARL = 8
    SPKI = 9
    X509_ATTRIBUTE = 10
    RAW_RSA_KEY = 11         # deprecated by RFC 7670
    HASH_URL_X509 = 12
    HASH_URL_X509_BUNDLE = 13
    OCSP_CONTENT = 14        # RFC 4806
    RAW_PUBLIC_KEY = 15      # RFC 7670


class HashAlgorithm(enum.IntEnum):
    """Hash algorithms of the SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4, IANA)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5  # RFC 8420: the signature algorithm hashes itself (Ed25519, Ed448)
