"""Shared SECDED Hamming(8,4) code tables and helpers for the hamming programs.

Every nibble of the original data becomes one code byte whose bit i holds
Hamming position i: bits 1..7 are the classic Hamming(7,4) codeword
(parity at positions 1, 2 and 4, data bits d0..d3 at positions 3, 5, 6
and 7) and bit 0 is an overall parity bit that makes the byte's popcount
even.  An original byte b encodes as code(b >> 4), code(b & 15): high
nibble first.  All work is done on whole blocks with bytes.hex,
bytes.fromhex and bytes.translate over precomputed 256-entry tables, so the
per-byte work happens in C.
"""
import sys

DATA_POSITIONS = (3, 5, 6, 7)  # Hamming positions of nibble bits 0..3
BLOCK_SIZE = 1 << 20           # bytes read per block; even, so code pairs stay whole
CLEAN, CORRECTED, DETECTED = 0, 1, 2


def codeword(nibble):
    """The code byte of a 4-bit value."""
    word = 0
    for bit, position in enumerate(DATA_POSITIONS):
        if nibble >> bit & 1:
            word |= 1 << position
    check = syndrome(word)
    for parity in (1, 2, 4):  # the parity bit at position p zeroes bit p of the syndrome
        if check & parity:
            word |= 1 << parity
    return word | bin(word).count("1") & 1


def syndrome(word):
    """XOR of the Hamming positions 1..7 whose bit is set: 0 for a codeword."""
    result = 0
    for position in range(1, 8):
        if word >> position & 1:
            result ^= position
    return result


def classify(word):
    """(state, corrected word) of any byte: CLEAN, CORRECTED (1 bit) or DETECTED (2 bits)."""
    odd = bin(word).count("1") & 1
    position = syndrome(word)
    if odd:
        return CORRECTED, word ^ 1 << position
    return (DETECTED if position else CLEAN), word


def nibble(word):
    """The data bits of a code byte, as read (no correction)."""
    return sum(1 << bit for bit, position in enumerate(DATA_POSITIONS) if word >> position & 1)


HEX_DIGITS = b"0123456789abcdef"
CODE = bytes(codeword(n) for n in range(16))
# bytes.hex() already splits bytes into nibbles, high first: translating its
# digits to code bytes (and back) keeps all the per-byte work in C.
HEX_TO_CODE = bytes(CODE[HEX_DIGITS.index(c)] if c in HEX_DIGITS else 0 for c in range(256))
CODE_TO_HEX = bytes(HEX_DIGITS[nibble(classify(w)[1])] for w in range(256))
FIX = bytes(classify(w)[1] for w in range(256))
STATE = bytes(classify(w)[0] for w in range(256))


def encode(data):
    """Raw bytes to code bytes: two per input byte, high nibble first."""
    return data.hex().encode("ascii").translate(HEX_TO_CODE)


def decode(code):
    """Code bytes (even length) to raw bytes, correcting single-bit errors."""
    return bytes.fromhex(code.translate(CODE_TO_HEX).decode("ascii"))


def fix(code):
    """Code bytes with every single-bit error corrected; double errors as they are."""
    return code.translate(FIX)


def count_errors(code):
    """(corrected, detected): code bytes with one flipped bit, and with two."""
    states = code.translate(STATE)
    return states.count(CORRECTED), states.count(DETECTED)


def blocks(stream=None, size=BLOCK_SIZE):
    """The bytes of a binary stream (default stdin) in blocks of `size` (last may be short)."""
    stream = stream or sys.stdin.buffer
    while True:
        block = stream.read(size)
        if not block:
            return
        yield block


def report_counter(name, amount, group="hamming"):
    """Bump a job counter the Hadoop Streaming way: a `reporter:` line on stderr."""
    sys.stderr.write(f"reporter:counter:{group},{name},{amount}\n")
