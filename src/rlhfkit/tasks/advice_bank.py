"""The sentences the `advice` task's replies are made of: per-topic questions and tips, and
the generic sentences (openers, closers, filler, rude remarks) the gold annotator judges."""

TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "plants": {
        "questions": (
            "How do I keep my houseplants alive?",
            "My plants keep dying, what should I do?",
            "Any tips for growing plants indoors?",
        ),
        "tips": (
            "Water them only when the top soil feels dry.",
            "Put them near a bright window.",
            "Use pots with drainage holes.",
            "Feed them with fertilizer in spring.",
            "Wipe dust off the leaves now and then.",
            "Move them to a bigger pot when roots show.",
        ),
    },
    "sleep": {
        "questions": (
            "How can I sleep better at night?",
            "I keep waking up tired, any advice?",
            "What helps with falling asleep faster?",
        ),
        "tips": (
            "Go to bed at the same time every night.",
            "Keep your bedroom dark and cool.",
            "Avoid coffee after lunch.",
            "Put your phone away an hour before bed.",
            "Get some daylight in the morning.",
            "Keep naps shorter than half an hour.",
        ),
    },
    "running": {
        "questions": (
            "How do I start running?",
            "Any tips for a new runner?",
            "How can I run longer without getting hurt?",
        ),
        "tips": (
            "Start with short runs and walk breaks.",
            "Wear shoes that fit your feet well.",
            "Add only a little distance each week.",
            "Warm up with a few minutes of brisk walking.",
            "Take a rest day between hard runs.",
            "Run at a pace where you can still talk.",
        ),
    },
    "cooking": {
        "questions": (
            "How can I get better at cooking?",
            "I am new to cooking, where do I start?",
            "Any tips for cooking simple meals at home?",
        ),
        "tips": (
            "Learn a few basic recipes well first.",
            "Taste the food as you cook.",
            "Keep your knives sharp.",
            "Prepare all ingredients before you start.",
            "Season with salt a little at a time.",
            "Let the pan get hot before adding food.",
        ),
    },
    "money": {
        "questions": (
            "How can I save more money?",
            "What are good ways to stick to a budget?",
            "Any advice for managing my money?",
        ),
        "tips": (
            "Write down everything you spend for a month.",
            "Set aside savings on payday.",
            "Cancel subscriptions you do not use.",
            "Cook at home instead of eating out.",
            "Keep an emergency fund for surprises.",
            "Wait a day before big purchases.",
        ),
    },
    "study": {
        "questions": (
            "How can I study more effectively?",
            "Any tips for preparing for exams?",
            "How do I remember what I read?",
        ),
        "tips": (
            "Study in short sessions with breaks.",
            "Test yourself instead of rereading.",
            "Explain the topic out loud in your own words.",
            "Review your notes the next day.",
            "Put your phone in another room.",
            "Start early instead of cramming.",
        ),
    },
    "coffee": {
        "questions": (
            "How do I make better coffee at home?",
            "Any tips for brewing good coffee?",
            "Why does my coffee taste bitter?",
        ),
        "tips": (
            "Use freshly ground beans.",
            "Keep the water just below boiling.",
            "Weigh the coffee and the water.",
            "Clean your coffee maker often.",
            "Store beans in a sealed container.",
            "Try a coarser grind if it tastes bitter.",
        ),
    },
    "dogs": {
        "questions": (
            "How do I train my new puppy?",
            "Any tips for teaching a dog to behave?",
            "How can I keep my dog happy?",
        ),
        "tips": (
            "Reward good behavior right away.",
            "Keep training sessions short.",
            "Walk your dog every day.",
            "Use the same words for each command.",
            "Give your dog toys to chew.",
            "Be patient and stay calm.",
        ),
    },
    "cycling": {
        "questions": (
            "How do I start cycling to work?",
            "Any tips for a new cyclist?",
            "How can I ride my bike more safely?",
        ),
        "tips": (
            "Always wear a helmet.",
            "Check your tire pressure every week.",
            "Use lights when it gets dark.",
            "Plan a route on quiet streets.",
            "Keep your chain clean and oiled.",
            "Signal before you turn.",
        ),
    },
    "email": {
        "questions": (
            "How do I write a good work email?",
            "Any tips for clearer emails?",
            "How can I get people to answer my emails?",
        ),
        "tips": (
            "Put the main point in the first line.",
            "Write a clear subject line.",
            "Keep it short and to the point.",
            "Say exactly what you need and by when.",
            "Read it once more before sending.",
            "Use a friendly greeting.",
        ),
    },
}

OPENERS = ("Happy to help!", "Great question.", "Sure, here are some ideas.")
CLOSERS = ("I hope this helps.", "Good luck!", "Have fun with it.")
FILLER = (
    "It depends on many things.",
    "There are many ways to do it.",
    "Everyone is different.",
    "This is a common question.",
)
RUDE = ("That is a silly question.", "Just search for it yourself.", "I do not care about this.")
