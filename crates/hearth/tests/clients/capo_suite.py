"""capo-lambda-microvms validates nothing client-side, so every bad value
reaches the server: it must answer ValidationException naming the field."""
import os

from capo_lambda_microvms import LambdaMicrovmsClient

E = os.environ["HEARTH_ENDPOINT"]
ARN = os.environ["IMAGE_ARN"]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


client = LambdaMicrovmsClient(region="us-east-1", endpoint=E, retry_max_attempts=1)

items = client.list_microvm_images()
print("list:", items)

bad_calls = [
    ("maxResults 0", lambda: client.list_microvms(max_results=0), "maxResults"),
    ("maxResults 51", lambda: client.list_microvms(max_results=51), "maxResults"),
    ("image id over 256 chars", lambda: client.get_microvm_image(image_identifier="i" * 300), "imageIdentifier"),
    ("bad status enum", lambda: client.update_microvm_image_version(image_identifier=ARN, image_version="1", status="SIDEWAYS"), "status"),
    ("idle policy below minimum", lambda: client.run_microvm(image_identifier=ARN, idle_policy={"max_idle_duration_seconds": 1, "suspended_duration_seconds": 0, "auto_resume_enabled": True}), "idlePolicy.maxIdleDurationSeconds"),
    ("duration over maximum", lambda: client.run_microvm(image_identifier=ARN, maximum_duration_in_seconds=999999), "maximumDurationInSeconds"),
]
for name, call, field in bad_calls:
    try:
        call()
        raise AssertionError(f"{name}: accepted")
    except AssertionError:
        raise
    except Exception as e:  # capo raises typed errors; check code and text
        text = f"{type(e).__name__}: {e}"
        check("Validation" in text, f"{name}: {text}")
        check(field in text, f"{name}: field {field} not named in {text}")
print("capo suite: ok")
