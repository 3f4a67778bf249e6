"""The console in a real Chromium on the real pack and photos: verify, identify, the gallery,
errors in words, and the API key prompt; every request to another host is aborted."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import live_service

from service.settings import Settings

pytestmark = [pytest.mark.assets, pytest.mark.slow]

KEY = "k" * 32
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def photos(assets_dir: Path) -> Path:
    folder = assets_dir / "images" / "face_recognition"
    if not (folder / "obama" / "obama.jpg").is_file():
        pytest.skip(f"face_recognition photos not found in {folder}")
    return folder


def assert_offline(network) -> None:
    assert network.blocked == [], "the console asked for other hosts"
    assert network.failed == []


def layout(page) -> list[tuple[float, float]]:
    """Where the photo frames, the button and the result are: loading must not move them."""
    boxes = [
        page.locator(selector).bounding_box()
        for selector in ("#verify-canvas-1", "#verify-canvas-2", "#verify-run", "#verify-result")
    ]
    return [(box["x"], box["y"]) for box in boxes]


def choose_pair(page, first: Path, second: Path) -> None:
    page.set_input_files("#verify-file-1", first)
    page.set_input_files("#verify-file-2", second)


def test_verify_obama_pair_is_a_match_with_both_faces_boxed(
    service_url, open_page, photos, tmp_path
):
    page, network = open_page(service_url)
    page.goto(f"{service_url}/")
    assert page.url == f"{service_url}/console/"
    page.locator("#verify-result .placeholder").wait_for()
    before = layout(page)
    choose_pair(page, photos / "obama" / "obama.jpg", photos / "obama" / "obama2.jpg")
    decision = page.get_by_test_id("decision")
    decision.wait_for(timeout=TIMEOUT_MS)
    assert decision.inner_text() == "Same person"
    assert layout(page) == before, "the photos or the button moved while results loaded"
    for n in (1, 2):
        assert "1 face(s) boxed" in page.get_attribute(f"#verify-canvas-{n}", "aria-label")
        info = page.inner_text(f"#verify-info-{n}")
        assert "1 face found" in info and "Compared face #1" in info and "quality" in info
    result = page.inner_text("#verify-result")
    assert "Similarity 0." in result and "threshold" in result
    for stage in ("decode", "detect", "align", "embed", "total"):
        assert stage in result
    page.screenshot(path=tmp_path / "verify-match.png", full_page=True)
    assert_offline(network)
    assert network.errors == [] and network.console_errors == []


def test_verify_obama_and_biden_is_no_match(service_url, open_page, photos, tmp_path):
    page, network = open_page(service_url)
    page.goto(f"{service_url}/console/#verify")
    choose_pair(page, photos / "obama" / "obama.jpg", photos / "biden" / "biden.jpg")
    decision = page.get_by_test_id("decision")
    decision.wait_for(timeout=TIMEOUT_MS)
    assert decision.inner_text() == "Not the same person"
    assert "below it, so no match" in page.inner_text("#verify-result")
    page.screenshot(path=tmp_path / "verify-no-match.png", full_page=True)
    assert_offline(network)


def test_a_text_file_dropped_as_a_photo_says_it_is_not_an_image(service_url, open_page, tmp_path):
    page, network = open_page(service_url)
    page.goto(f"{service_url}/console/#verify")
    transfer = page.evaluate_handle(
        "() => { const t = new DataTransfer();"
        " t.items.add(new File(['just some notes'], 'notes.txt', {type: 'text/plain'}));"
        " return t; }"
    )
    page.dispatch_event("#verify-drop-1", "drop", {"dataTransfer": transfer})
    error = page.locator('#verify-info-1 .error[data-code="invalid_image"]')
    error.wait_for(timeout=TIMEOUT_MS)
    assert "not a photo the service can read" in error.inner_text()
    page.screenshot(path=tmp_path / "invalid-image.png", full_page=True)
    assert_offline(network)


def enrol(page, name: str, photo: Path) -> None:
    page.fill("#create-name", name)
    page.get_by_role("button", name="Create").click()
    page.locator("#identity-name", has_text=name).wait_for(timeout=TIMEOUT_MS)
    page.set_input_files("#identity-detail input[type=file]", photo)
    page.get_by_test_id("enrolled").wait_for(timeout=TIMEOUT_MS)


def identify(page, photo: Path) -> str:
    page.goto(page.url.split("#")[0] + "#identify")
    page.locator("#identify-result .placeholder, #identify-result .face-results").first.wait_for()
    page.set_input_files("#identify-file", photo)
    # Only the answer to this photo: the result is busy from the moment the photo is chosen.
    who = page.locator('#identify-result[aria-busy="false"] [data-testid="who"]').first
    who.wait_for(timeout=TIMEOUT_MS)
    return who.inner_text()


def left_on_screen_when_chosen(page, file_input: str, answer: str) -> None:
    """Counts, the moment the console has handled a new photo, the old answers still shown."""
    page.evaluate(
        """([input, answer]) => document.querySelector(input).addEventListener("change", () => {
            window.leftOnScreen = document.querySelectorAll(answer).length;
        })""",
        [file_input, answer],
    )


def test_a_new_photo_takes_the_previous_answer_away_at_once(service_url, open_page, photos):
    """A verdict or a name beside a photo it does not belong to is a wrong answer on screen."""
    page, network = open_page(service_url)
    page.goto(f"{service_url}/console/#identify")
    identify(page, photos / "obama" / "obama3.jpg")
    left_on_screen_when_chosen(page, "#identify-file", '#identify-result [data-testid="who"]')
    page.set_input_files("#identify-file", photos / "biden" / "biden.jpg")
    assert page.evaluate("window.leftOnScreen") == 0
    page.locator('#identify-result[aria-busy="false"] [data-testid="who"]').wait_for(
        timeout=TIMEOUT_MS
    )

    page.goto(f"{service_url}/console/#verify")
    choose_pair(page, photos / "obama" / "obama.jpg", photos / "obama" / "obama2.jpg")
    page.get_by_test_id("decision").wait_for(timeout=TIMEOUT_MS)
    left_on_screen_when_chosen(page, "#verify-file-2", '[data-testid="decision"]')
    page.set_input_files("#verify-file-2", photos / "biden" / "biden.jpg")
    assert page.evaluate("window.leftOnScreen") == 0
    decision = page.get_by_test_id("decision")
    decision.wait_for(timeout=TIMEOUT_MS)
    assert decision.inner_text() == "Not the same person"
    assert_offline(network)
    assert network.errors == [] and network.console_errors == []


def test_enrol_two_people_identify_a_third_photo_then_delete_and_see_unknown(
    service_url, open_page, photos, tmp_path
):
    page, network = open_page(service_url)
    page.goto(f"{service_url}/console/#gallery")
    enrol(page, "Barack Obama", photos / "obama" / "obama.jpg")
    assert "Quality" in page.inner_text("#identity-detail")
    assert "the enrolled face is boxed" in page.get_attribute(
        "#identity-detail canvas", "aria-label"
    )
    enrol(page, "Joe Biden", photos / "biden" / "biden.jpg")
    page.locator("#gallery-counts", has_text="2 people · 2 enrolled faces").wait_for()
    page.screenshot(path=tmp_path / "gallery.png", full_page=True)

    page.fill("#search-name", "bara")
    page.get_by_role("button", name="Search").click()
    page.locator("#page-info", has_text="1–1 of 1 found").wait_for()
    assert "Joe Biden" not in page.inner_text("#identity-table")
    page.fill("#search-name", "")
    page.get_by_role("button", name="Search").click()
    page.locator("#page-info", has_text="1–2 of 2").wait_for()

    assert identify(page, photos / "obama" / "obama3.jpg") == "Barack Obama"
    assert "Barack Obama: 0." in page.inner_text("#identify-result")
    page.screenshot(path=tmp_path / "identify.png", full_page=True)

    page.goto(f"{service_url}/console/#gallery")
    page.get_by_role("button", name="Barack Obama").click()
    page.get_by_role("button", name="Delete Barack Obama").click()
    page.get_by_role("button", name="Cancel").click()  # the confirmation, declined
    assert "Barack Obama" in page.inner_text("#identity-table")
    page.get_by_role("button", name="Delete Barack Obama").click()
    page.get_by_role("button", name="Delete person").click()  # the confirmation
    page.locator("#gallery-counts", has_text="1 people · 1 enrolled faces").wait_for()
    assert "Barack Obama" not in page.inner_text("#identity-table")

    page.get_by_role("button", name="Joe Biden").click()
    page.fill("#rename-input", "Joseph Biden")
    page.get_by_role("button", name="Rename").click()
    page.locator("#identity-table", has_text="Joseph Biden").wait_for()
    page.get_by_role("button", name="Delete face 1 of Joseph Biden").click()
    page.get_by_role("button", name="Delete face", exact=True).click()  # confirmation
    page.locator("#identity-detail", has_text="No enrolled face yet").wait_for()
    page.locator("#gallery-counts", has_text="1 people · 0 enrolled faces").wait_for()

    assert identify(page, photos / "obama" / "obama3.jpg") == "Unknown"
    assert_offline(network)
    assert network.errors == []


def test_console_fits_a_phone_screen(service_url, open_page, photos, tmp_path):
    page, network = open_page(service_url, width=375, height=740)
    page.goto(f"{service_url}/console/#verify")
    choose_pair(page, photos / "obama" / "obama.jpg", photos / "obama" / "obama2.jpg")
    page.get_by_test_id("decision").wait_for(timeout=TIMEOUT_MS)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=tmp_path / "phone-verify.png", full_page=True)
    for name in ("gallery", "status"):
        page.goto(f"{service_url}/console/#{name}")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, name
        page.screenshot(path=tmp_path / f"phone-{name}.png", full_page=True)
    assert_offline(network)


def test_with_keys_on_the_console_asks_for_a_key_and_then_works(real_pack_dir, open_page, tmp_path):
    settings = Settings(
        pack_dir=real_pack_dir, data_dir=tmp_path / "data", api_keys=KEY, _env_file=None
    )
    with live_service(settings) as url:
        page, network = open_page(url)
        page.goto(f"{url}/console/#status")
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible", timeout=TIMEOUT_MS)
        assert "needs an API key" in dialog.inner_text()
        page.screenshot(path=tmp_path / "key-prompt.png")

        page.fill("#key-input", "not-the-key-at-all")
        page.get_by_role("button", name="Use this key").click()
        page.locator("#key-message", has_text="did not accept").wait_for(timeout=TIMEOUT_MS)

        page.fill("#key-input", KEY)
        page.get_by_role("button", name="Use this key").click()
        page.locator("#status-list", has_text="required").wait_for(timeout=TIMEOUT_MS)
        assert page.evaluate("sessionStorage.getItem('faceverify.apiKey')") == KEY
        assert page.evaluate("localStorage.length") == 0
        assert_offline(network)


def test_quality_and_error_codes_render_in_words_whatever_shape_the_api_gives(
    service_url, open_page
):
    """Quality is a number (embedding norm) today and an object with a level and reasons in
    newer services; both render. Codes of newer services (forbidden, rate_limited) have words."""
    page, network = open_page(service_url)
    page.goto(f"{service_url}/console/")
    rendered = page.evaluate(
        """async () => {
        const { qualityElement } = await import("./js/quality.js");
        const { describeError } = await import("./js/messages.js");
        const { ApiError } = await import("./js/api.js");
        const text = (q) => qualityElement(q).textContent;
        const object = qualityElement({level: "low", reasons: ["blurry", "small_face"],
                                       embedding_norm: 9.87, blur: 0.2});
        return {
          number: text(21.44), none: text(null), object: object.textContent,
          levelClass: object.querySelector(".quality").className,
          odd: text({}), string: text("good"),
          forbidden: describeError(new ApiError(403, "forbidden", "key lacks scope")).words,
          limited: describeError(new ApiError(429, "rate_limited", "slow down", "7")).words,
          unknown: describeError(new ApiError(418, "teapot", "short and stout")).words,
          network: describeError(new ApiError(0, "network", "no answer")).words,
        };
      }"""
    )
    assert rendered["number"] == "norm 21.4"
    assert rendered["none"] == "not measured"
    assert rendered["object"] == "low · norm 9.9blurrysmall face"
    assert rendered["levelClass"] == "quality low"
    assert rendered["odd"] == "measured" and rendered["string"] == "good"
    assert rendered["forbidden"] == "Your API key is not allowed to do this."
    assert rendered["limited"] == "Too many requests right now. Try again in 7 seconds."
    assert "(418)" in rendered["unknown"]
    assert "cannot be reached" in rendered["network"]
    assert_offline(network)


def test_every_control_has_a_name_and_the_photo_pickers_are_reached_with_tab(
    service_url, open_page
):
    page, network = open_page(service_url)
    page.goto(f"{service_url}/console/#verify")
    page.locator("#verify-canvas-1").wait_for()
    for name in ("verify", "identify", "gallery", "status"):
        page.goto(f"{service_url}/console/#{name}")
        page.wait_for_load_state("networkidle")
        unnamed = page.evaluate(
            """() => [...document.querySelectorAll("input, button, select, textarea, a")]
              .filter((el) => el.offsetParent !== null || el.classList.contains("file-input"))
              .filter((el) => !(el.labels?.length || el.getAttribute("aria-label")
                                || el.textContent.trim()))
              .map((el) => el.outerHTML)"""
        )
        assert unnamed == [], f"controls without a name on {name}"
    page.goto(f"{service_url}/console/#verify")
    reached = set()
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id"))
    assert {"verify-file-1", "verify-file-2"} <= reached
    assert_offline(network)


def test_a_slow_answer_shows_the_progress_bar_until_it_arrives(service_url, open_page):
    page, network = open_page(service_url)
    page.goto(f"{service_url}/console/#verify")
    page.evaluate(
        """() => { const fetch = window.fetch;
        window.fetch = (...args) =>
          new Promise((done) => setTimeout(() => done(fetch(...args)), 800)); }"""
    )
    page.evaluate("location.hash = '#status'")
    page.locator("#progress.active").wait_for(timeout=5_000)
    assert page.get_attribute("#main", "aria-busy") == "true"
    page.locator("#status-list dt").first.wait_for(timeout=TIMEOUT_MS)
    page.locator("#progress:not(.active)").wait_for(timeout=5_000)
    assert page.get_attribute("#main", "aria-busy") == "false"
    assert_offline(network)
