# Reference output of PIL's Lanczos resize for ImageInputTests (run with Debian's python3-pil:
# /usr/bin/python3 make_lanczos_reference.py > lanczos_pil.json). The input is a formula both sides compute.
import base64, json, sys
from PIL import Image
import PIL

W, H = 21, 13
pixels = bytes((x * 37 + y * 91 + c * 53 + (x * y) % 17 * 11) % 256 for y in range(H) for x in range(W) for c in range(3))
image = Image.frombytes("RGB", (W, H), pixels)
cases = {}
for (w, h) in [(16, 8), (40, 24), (16, 13), (21, 30)]:
    cases[f"{w}x{h}"] = base64.b64encode(image.resize((w, h), resample=Image.LANCZOS).tobytes()).decode()
json.dump({"pillow": PIL.__version__, "width": W, "height": H, "resized": cases}, sys.stdout, indent=1)
