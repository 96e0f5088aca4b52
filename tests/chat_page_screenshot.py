"""A screenshot of the chat page of a running `gptkit serve`, after a conversation typed into it, in Debian's headless
Chromium (as tests/test_chat_page.py drives it):

    uv run python tests/chat_page_screenshot.py http://127.0.0.1:8000 docs/chat-page.png "Hello!" "And then?"
"""

import argparse
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By
from test_chat_page import chromium, open_page, say, set_settings, wait_for_reply


class Served:
    """What open_page needs of a server: its URL."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server's address, e.g. http://127.0.0.1:8000")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("messages", nargs="+", help="the user's messages, in order")
    parser.add_argument("--system", default="", help="the system prompt")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--key", help="the server's API key, if it needs one")
    parser.add_argument("--dark", action="store_true", help="with the dark colour scheme")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(Path(profile))
        try:
            if args.dark:
                features = [{"name": "prefers-color-scheme", "value": "dark"}]
                driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})
            open_page(driver, Served(args.url))
            if args.key:
                driver.find_element(By.ID, "key").send_keys(args.key + "\n")
            set_settings(driver, args.temperature, args.max_tokens, args.system)
            for message in args.messages:
                say(driver, message)
                wait_for_reply(driver)
            driver.execute_script("document.activeElement.blur()")
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
