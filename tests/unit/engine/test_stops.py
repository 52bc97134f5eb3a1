from modelgate.engine.stops import StopMatcher


def run(stops, pieces):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True
    out.append(m.flush())
    return "".join(out), False


def test_stop_split_across_pieces_is_not_emitted():
    assert run(["END"], ["hello E", "N", "D tail"]) == ("hello ", True)


def test_prefix_is_held_back_then_released_when_it_is_not_a_stop():
    m = StopMatcher(["END"])
    assert m.feed("abc EN") == ("abc ", False)
    assert m.feed("x") == ("ENx", False)


def test_earliest_of_several_stops_wins():
    assert run(["bb", "a"], ["xxbba"]) == ("xx", True)


def test_no_stops_passes_everything_through():
    assert run([], ["a", "b"]) == ("ab", False)


def test_text_held_at_the_end_is_flushed():
    assert run(["STOP"], ["go ST"]) == ("go ST", False)


def test_stop_with_multibyte_characters():
    assert run(["😀!"], ["Привет 😀", "! more"]) == ("Привет ", True)
