"""The toy world's lexicon: every entity and attribute the synthetic corpus talks about.

These lists are the ground truth behind the offline stand-ins for SAEBench's datasets:
professions and genders (bias-in-bios style, for SCR / TPP / sparse probing), cities with
country / continent / language (RAVEL style), and plain alphabetic words (absorption).
Profession names are the keys of SAEBench's ``profession_dict`` so labels mean the same.
"""

MALE_NAMES = [
    "James", "John", "Robert", "Michael", "David", "Richard", "Joseph", "Thomas", "Charles",
    "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul", "Andrew", "Joshua", "Kevin",
    "Brian", "George", "Edward", "Ronald", "Timothy", "Jason", "Jeffrey", "Ryan", "Jacob",
    "Gary", "Nicholas", "Eric",
]
FEMALE_NAMES = [
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
    "Sarah", "Karen", "Lisa", "Nancy", "Betty", "Sandra", "Ashley", "Emily", "Donna",
    "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Laura",
    "Sharon", "Cynthia", "Kathleen", "Amy", "Angela",
]
SURNAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson",
    "Moore", "Taylor", "Anderson", "Jackson", "White", "Harris", "Martin", "Thompson",
    "Clark", "Lewis", "Walker", "Hall", "Allen", "Young", "King", "Wright", "Scott", "Green",
    "Baker", "Adams", "Nelson",
]

# profession -> (phrase used in text, things such a person does, where they work).
# Keys are SAEBench bias_in_bios profession names (sae_bench_utils.dataset_info).
PROFESSIONS = {
    "accountant": ("accountant", ["audits the accounts", "prepares tax returns", "balances the books"], "firm"),
    "architect": ("architect", ["designs houses", "draws building plans", "plans new towers"], "studio"),
    "attorney": ("attorney", ["argues cases in court", "writes legal contracts", "defends clients"], "law office"),
    "dentist": ("dentist", ["cleans teeth", "fills cavities", "treats gum disease"], "dental clinic"),
    "filmmaker": ("filmmaker", ["directs short films", "edits documentaries", "shoots movies"], "film studio"),
    "journalist": ("journalist", ["writes news stories", "interviews politicians", "reports on elections"], "newspaper"),
    "nurse": ("nurse", ["cares for patients", "gives injections", "works night shifts"], "hospital"),
    "painter": ("painter", ["paints landscapes", "mixes oil colors", "shows art in galleries"], "gallery"),
    "photographer": ("photographer", ["takes portraits", "shoots weddings", "develops photos"], "photo studio"),
    "physician": ("physician", ["examines patients", "prescribes medicine", "diagnoses illness"], "clinic"),
    "poet": ("poet", ["writes poems", "reads verses aloud", "publishes poetry books"], "library"),
    "professor": ("professor", ["teaches university courses", "publishes research papers", "supervises students"], "university"),
    "psychologist": ("psychologist", ["counsels clients", "studies behavior", "runs therapy sessions"], "practice"),
    "surgeon": ("surgeon", ["performs operations", "repairs broken bones", "operates on hearts"], "hospital"),
    "teacher": ("teacher", ["teaches children to read", "grades homework", "plans school lessons"], "school"),
}

# city -> (country, continent, language): RAVEL-style entity -> attribute facts.
CITIES = {
    "Paris": ("France", "Europe", "French"),
    "Lyon": ("France", "Europe", "French"),
    "Berlin": ("Germany", "Europe", "German"),
    "Munich": ("Germany", "Europe", "German"),
    "Madrid": ("Spain", "Europe", "Spanish"),
    "Seville": ("Spain", "Europe", "Spanish"),
    "Rome": ("Italy", "Europe", "Italian"),
    "Milan": ("Italy", "Europe", "Italian"),
    "Tokyo": ("Japan", "Asia", "Japanese"),
    "Osaka": ("Japan", "Asia", "Japanese"),
    "Beijing": ("China", "Asia", "Chinese"),
    "Shanghai": ("China", "Asia", "Chinese"),
    "Cairo": ("Egypt", "Africa", "Arabic"),
    "Lagos": ("Nigeria", "Africa", "English"),
    "Toronto": ("Canada", "America", "English"),
    "Chicago": ("USA", "America", "English"),
    "Boston": ("USA", "America", "English"),
    "Lima": ("Peru", "America", "Spanish"),
    "Sydney": ("Australia", "Oceania", "English"),
    "Moscow": ("Russia", "Europe", "Russian"),
}

# Plain lower-case words for first-letter facts ("apple starts with A"): the absorption metric's
# ground truth. Many first letters, several words each.
WORDS = [
    "apple", "anchor", "animal", "arrow", "bread", "basket", "bottle", "bridge", "candle",
    "castle", "carpet", "cotton", "dragon", "dinner", "doctor", "desert", "eagle", "engine",
    "empire", "energy", "forest", "flower", "father", "finger", "garden", "guitar", "ginger",
    "golden", "hammer", "harbor", "honey", "island", "insect", "iron", "jacket", "jungle",
    "jelly", "kettle", "kitchen", "kingdom", "ladder", "lemon", "letter", "market", "mirror",
    "monkey", "mother", "needle", "number", "night", "orange", "ocean", "office", "pencil",
    "pepper", "planet", "pocket", "rabbit", "river", "rocket", "silver", "summer", "sugar",
    "table", "temple", "tiger", "tomato", "valley", "velvet", "violin", "window", "winter",
    "wallet",
]

NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
OBJECTS = ["apples", "books", "chairs", "coins", "cups", "lamps", "maps", "shirts", "stones", "tickets"]
