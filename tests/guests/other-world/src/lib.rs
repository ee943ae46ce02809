//! A valid WebAssembly component for another world than `mailcall:rule`:
//! the engine must refuse it as a rule with a reason, never load it.

wit_bindgen::generate!({
    inline: "
        package test:other-world;

        world other {
            export answer: func() -> u32;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn answer() -> u32 {
        42
    }
}

export!(Other);
